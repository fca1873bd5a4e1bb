// placeholder; replaced as the module lands
