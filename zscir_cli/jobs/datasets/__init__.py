"""Data sets in the cache: preparing them (`shapes`, `folders`, `shards` for webdataset and CSV)
and finding them again by name, key or split (`store`); `prepare` requests in `config`."""
