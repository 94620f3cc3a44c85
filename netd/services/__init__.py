"""
netd's own service plugins: what each service is called, where it listens
by default, its options, and how those options build its protocols.

Each module here is imported by C{twisted/plugins/netd_plugin.py}, so it
imports its protocol module only inside the C{make*} methods.
"""
