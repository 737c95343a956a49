// placeholder until the fuse layer lands
