"""
The getfile service: the book's file download protocol (C{PATH\\n}, then the
bytes) and its extended form (C{GETFILE/1 OFFSET PATH\\n}), confined to a
root: L{server} holds the protocol and streaming, L{plugin} the options and
defaults, L{client} the C{netd-client getfile} command.
"""
