"""
Tests of L{netd.services.getfile}.
"""
