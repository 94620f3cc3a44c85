"""
Tests of L{netd.services.chargen}.
"""
