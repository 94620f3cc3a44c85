"""
Tests of L{netd.services.objects}.
"""
