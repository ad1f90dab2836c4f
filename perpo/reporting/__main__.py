"""``python -m perpo.reporting <runs...>``: see :mod:`perpo.reporting.report`."""

from perpo.reporting.report import main

main()
