"""What a user can do with a run, called alike by the command line and the napari plugin."""
