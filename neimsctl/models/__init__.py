"""L2: teacher / student / baseline model assemblies, save and load."""
