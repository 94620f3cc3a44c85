"""
Tests of L{netd.services.discard}.
"""
