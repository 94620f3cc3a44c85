"""
The discard service (RFC 863), over TCP and UDP: L{server} holds the
protocols, L{plugin} the service's options and defaults.
"""
