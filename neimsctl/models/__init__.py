"""L2: teacher / student / baseline model assemblies, checkpoint files, save and load."""
