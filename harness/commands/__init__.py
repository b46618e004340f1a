"""The commands of `speedrun`, one module each: each turns its arguments into calls of the modules below
(the campaign engine, the results, the renderers) and prints. Nothing below imports a command."""
