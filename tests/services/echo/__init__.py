"""
Tests of L{netd.services.echo}.
"""
