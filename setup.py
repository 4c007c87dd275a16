"""Everything is in pyproject.toml but this: the wheel's copy of metadata.yml.

metadata.yml stays at the top of the repository, where plain ``datasette --metadata
metadata.yml`` and readers of the README find it; package data cannot name a file outside
the package, so the build copies it into the wheel's ``pdsync/`` (see pdsync.serve.metadata_path).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

METADATA = Path(__file__).resolve().parent / "metadata.yml"


class BuildWithMetadata(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's own file
            target = Path(self.build_lib) / "pdsync" / "metadata.yml"
            self.mkpath(str(target.parent))
            shutil.copyfile(METADATA, target)


# Builds run this file as __main__; the guard keeps `import setup` harmless, which an editable
# install makes possible (its .pth puts the checkout on sys.path: pyproject.toml, package-dir).
if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildWithMetadata})
