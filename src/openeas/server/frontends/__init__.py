"""Front ends: thin protocol adapters over :class:`openeas.server.dataplane.DataPlane`."""
