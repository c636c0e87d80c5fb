"""The colours the plugin's own plots share with napari's dark theme (matplotlib and vispy)."""

#: Figure and canvas background, plot-area background, text, and muted lines and frames.
PLOT_COLOURS = {"figure": "#262930", "axes": "#1e1f24", "text": "#e6e6e6", "muted": "#8a8d93"}
