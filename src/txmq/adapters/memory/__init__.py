"""The in-process ``memory://`` broker, for fast tests without a broker."""
