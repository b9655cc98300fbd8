"""The live path: discovery of new runs, following their growing files, publishing every frame."""
