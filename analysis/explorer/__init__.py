"""The concept explorer: static, offline feature dashboards of the SAEs (``study.ConceptExplorer``)
and of the k-sparse autoencoder's units (``ksparse.KSparseExplorer``), one viewer for both."""
