"""D-FINE model parts: one module per architectural part, no training code."""
