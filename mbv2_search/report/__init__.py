"""Reports: analysis returns data (pandas), figures draw it (plotly). No torch here."""
