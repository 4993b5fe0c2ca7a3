"""Building blocks that know no model family."""
