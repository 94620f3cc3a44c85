"""
The dropin of netd-qotd: Twisted's plugin system finds the C{qotd} service
here, and netd offers it (C{--services qotd}, C{--qotd}, C{--qotd-file}).
"""

from netd_qotd.plugin import qotd

__all__ = ["qotd"]
