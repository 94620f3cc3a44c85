"""
The clock services: daytime (RFC 867), time (RFC 868) and SNTP (RFC 4330):
L{server} holds the formats and protocols, L{plugin} the three services'
options and defaults, L{client} their C{netd-client} commands.
"""
