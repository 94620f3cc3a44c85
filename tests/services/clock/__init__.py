"""
Tests of L{netd.services.clock}.
"""
