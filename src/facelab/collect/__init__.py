"""Collecting images for the face database: URL lists, image-search crawls, video frames.

Every image URL is fetched by :mod:`facelab.collect.fetch` (address guard on every redirect
hop, size cap, total deadline, image check), for ``db download`` and ``db crawl`` alike.

Example:
    >>> from facelab.collect.download import download_urls
    >>> download_urls(open("urls.txt").read().split(), "raw/").summary()  # doctest: +SKIP
"""
