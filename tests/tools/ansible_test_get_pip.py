"""Stand-in for get-pip.py, for ``ansible-test --venv`` on a machine that reaches only package registries.

ansible-test bootstraps pip into each virtual environment it creates by downloading a get-pip.py
script from its own CI file server, which this machine cannot reach. tests/tools/sanity.sh puts this
file where ansible-test caches that script (~/.ansible/test/cache/get_pip_<version>.py). It is run
the same way get-pip.py is (``python get_pip.py [pip options] pip==X.Y ...``): the project's own pip
(.venv, whose path sanity.sh writes into OUTER_PYTHON below) installs the requested packages into the
running interpreter with ``pip --python``, from the index the machine's pip configuration names.
Without that pip, the pip bundled with Python (ensurepip, no network) is installed first and used.
"""

import ensurepip
import os
import subprocess
import sys

OUTER_PYTHON = "@OUTER_PYTHON@"


def main(argv):
    options = [arg for arg in argv if arg not in ("--no-setuptools", "--no-wheel")]
    if os.path.isfile(OUTER_PYTHON):
        return subprocess.call([OUTER_PYTHON, "-m", "pip", "--python", sys.executable, "install", *options])
    ensurepip.bootstrap(upgrade=True, default_pip=True)
    return subprocess.call([sys.executable, "-m", "pip", "install", *options])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
