"""Variant generation: builds every kind of variant of a registered model and profiles it on this host.

Entry points are the background tasks ``build.build_model_variants`` and ``build.reprofile_model``;
``registry`` lists the kinds, ``profiler.profile_variant`` measures one artifact.
"""
