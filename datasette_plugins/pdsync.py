"""pdsync's Datasette plugin for ``datasette pipedrive.db --metadata metadata.yml
--plugins-dir datasette_plugins``. The plugin is the package ``pdsync.datasette_plugin``:
this file registers that package (so Datasette finds its templates), and holds no hooks."""

from pdsync.datasette_plugin import register

register()
