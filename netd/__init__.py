"""
netd: one twistd application serving echo, getfile, clock and objects.

Run it with C{twistd -n netd}; see C{twistd netd --help} for its options.
"""

__version__ = "0.1.0"
