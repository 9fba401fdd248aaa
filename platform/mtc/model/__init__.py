"""MT-CGCNN: CGCNN trunk(s), per-task heads, multitask losses, saved bundles."""
