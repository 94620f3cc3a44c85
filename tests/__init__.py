"""
netd's tests: run them with C{python -m twisted.trial tests} (or C{make test}).
"""
