"""
netd's own services, one package each, shaped as a third party's would be:

    netd/services/echo/      server.py (protocols), plugin.py, client.py
    netd/services/getfile/   server.py, confinement.py, plugin.py, client.py
    netd/services/clock/     server.py (daytime, time, SNTP), plugin.py, client.py
    netd/services/objects/   wire.py, unpickling.py, server.py, plugin.py, client.py

Each C{plugin.py} holds the service's L{netd.plugin.INetdService} provider
(its name, default endpoints, options and C{netd-client} commands); the
dropin C{twisted/plugins/netd_plugin.py} imports only those, and each imports
its protocols inside its C{make*} methods. A service package imports the
core (C{netd.*}), never another service.
"""
