"""Networks only: each family's nn.Modules and their configs. Nothing here trains or samples."""
