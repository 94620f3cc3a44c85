"""
The chargen service (RFC 864), over TCP and UDP: L{server} holds the
protocols, L{plugin} the service's options and defaults.
"""
