// placeholder until the server layer lands
