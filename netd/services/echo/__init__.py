"""
The echo service (RFC 862, and the book's C{Echo=>} server), over TCP and
UDP: L{server} holds the protocols, L{plugin} the service's options and
defaults, L{client} the C{netd-client echo} and C{load} commands.
"""
