"""Reports of an audit: image grids of the private batch next to its reconstructions, result files."""

from gradaudit.data.image_grid import save_reconstruction_grid
from gradaudit.report.run_files import write_results

__all__ = ["save_reconstruction_grid", "write_results"]
