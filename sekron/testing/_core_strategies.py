"""Core strategies: shapes that factor, structures, Kronecker factors, SeKron tensors."""

__all__: list[str] = []
