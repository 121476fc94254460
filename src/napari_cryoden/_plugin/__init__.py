"""The napari plugin: the only part of napari-cryoden that imports napari, Qt, magicgui or superqt."""
