"""The risk desk's read model: queries over the live engine, acknowledgements and their stores
(`readmodel`), and the bounded memory of recent events (`eventring`)."""
