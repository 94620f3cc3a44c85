"""
Tests of netd's own service packages, one folder per service as in C{netd/services/}.
"""
