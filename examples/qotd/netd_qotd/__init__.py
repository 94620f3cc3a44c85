"""
A Quote of the Day service (RFC 865) for netd, shipped as its own package.
"""
