"""Image repositories: content-addressed blobs, image metadata, revisions, drivers, cache.

Who owns what (one place per concern):

- ``layout.py``   every path inside a repository (data/, meta/, tmp/, lock, repo.json)
- ``uri.py``      ``[REPO:]IMAGE[@REVISION]`` parsing
- ``model.py``    the records exchanged between the store and the drivers
- ``digest.py``   ``sha256:<hex>`` digests: hashing bytes, files and streams, parsing
- ``meta.py``     image metadata (canonical JSON; its sha256 is the image ID)
- ``store.py``    Repository / RepoSet: blobs in, metadata commit under the lock, look-ups,
                  delete
- ``maintenance.py`` gc and fsck of a Repository (builds on store; store never imports it)
- ``drivers.py``  ``[FORMAT:]SOURCE`` parsing and the lazily imported driver registry
- ``ops.py``      import / export / copy / resize: the store and the drivers together
- ``qemu_img.py`` + ``vm.py``       VM images (qcow2 layer chains)
- ``skopeo.py`` + ``oci.py`` + ``sif.py``   container images (OCI), SIF import;
  ``ocifast.py`` re-imports a known local archive without skopeo
- ``ocispec.py``  OCI media types, checks of index/manifest/config, layout writing
- ``unpack.py``   safe extraction of OCI layers (no escapes, whiteouts applied)
- ``extract.py``  ``image cat-manifest`` / ``extract`` / ``render``: an image's manifest, and
                  its files written to a new directory through ``unpack.py``
- ``cache.py``    unpacked bundles / squashfs files keyed by image digest, LRU
- ``cachekeys.py`` the container images of the configured repositories by manifest digest
                  (the cache's key): what ``pcocc image cache delete`` and ``gc`` look up
"""
