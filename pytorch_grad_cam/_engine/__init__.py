"""The private machinery of the methods: capture, session, checks, maps, autograd, replay.

Importing it (every public module does) first checks that the ``grad-cam`` distribution has not been
installed into this package's folder (:mod:`.distribution`): a clear ImportError instead of a mix of two
libraries' modules.
"""

from .distribution import check_no_conflicting_distribution

check_no_conflicting_distribution()
