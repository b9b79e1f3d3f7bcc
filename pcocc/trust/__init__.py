"""Trust and fetch: OpenPGP keys trusted per image-name prefix (GnuPG), detached signature
checks, and the HTTPS fetch of images with meta discovery and HTTP caching.

Modules: :mod:`.prefix` (names, prefixes, escaping), :mod:`.gpg` (the GnuPG calls and the
status-fd parser), :mod:`.store` (the user and system trust directories), :mod:`.verify`
(the one signature decision), :mod:`.keys` (getting and reviewing keys), :mod:`.http`
(downloads), :mod:`.discovery` (meta tags), :mod:`.auth` (credentials), :mod:`.fetch`
(``pcocc image fetch``), :mod:`.settings` (the global ``--insecure-options`` & co).
"""
