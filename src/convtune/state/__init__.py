"""Where convtune keeps its state on this machine (`home`: the data folder) and how it knows two
files are the same (`digest`)."""
