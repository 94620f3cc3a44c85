"""
The objects service: pickled Python objects, wire-compatible with the
standard library's C{multiprocessing.connection}: L{wire} holds the frames
and the HMAC handshake, L{unpickling} the restricted unpickler (what a
request may name), L{server} the protocol and factory, L{plugin} the
options and defaults, L{client} a Twisted client and C{netd-client objects}.
"""
