"""`python -m kdeploy` (also what torchrun launches)."""

from kdeploy.cli import app

if __name__ == "__main__":
    app(prog_name="kdeploy")
