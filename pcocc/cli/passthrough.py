"""Commands that pass the options they do not own to a tool: alloc/batch to salloc/sbatch,
ssh to ssh, scp to scp (see :mod:`pcocc.optsplit`)."""

from __future__ import annotations

from typing import Any

import click

from pcocc.errors import UsageError
from pcocc.optsplit import OptionTable, split_args


def own_options(command: click.Command, ctx: click.Context) -> OptionTable:
    """The options of a click command, as a table for :func:`split_args`."""
    flags = list(ctx.help_option_names)
    values: list[str] = []
    for param in command.params:
        if isinstance(param, click.Option):
            names = [*param.opts, *param.secondary_opts]
            (flags if param.is_flag or param.count else values).extend(names)
    return OptionTable.of(command.name or "pcocc", flags=dict.fromkeys(flags), values=values)


class ToolOptionsCommand(click.Command):
    """A click command whose words that are not its own options go to a tool.

    ``tool``: the tool's option table; the tool's words (in their order) reach the callback
    as the tuple parameter ``tool_param``. ``interspersed`` and ``after_double_dash``: as in
    :func:`split_args`. The operands are the command's own arguments.
    """

    def __init__(self, *args: Any, tool: OptionTable, tool_param: str,
                 interspersed: bool, after_double_dash: str = "tool", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool = tool
        self.tool_param = tool_param
        self.interspersed = interspersed
        self.after_double_dash = after_double_dash

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        split = split_args(args, own_options(self, ctx), self.tool,
                           interspersed=self.interspersed,
                           after_double_dash=self.after_double_dash)
        try:
            rest = super().parse_args(ctx, [*split.own, "--", *split.positional])
        except click.UsageError as err:
            if split.unknown and "unexpected extra argument" in err.format_message():
                # most likely the value of an option pcocc does not know
                raise UsageError(
                    f"{err.format_message()}; {', '.join(split.unknown)}: neither"
                    f" {ctx.command_path}'s option nor one {self.tool.program} is known to"
                    " take a value",
                    hint=f"write its value attached ({split.unknown[0]}=VALUE), or put"
                    f" {self.tool.program} options after '--'",
                ) from None
            raise
        ctx.params[self.tool_param] = tuple(split.tool)
        return rest


def tool_command(tool: OptionTable, tool_param: str, *, interspersed: bool,
                 after_double_dash: str = "tool", **attrs: Any):
    """``@click.command`` for a :class:`ToolOptionsCommand`."""
    return click.command(cls=ToolOptionsCommand, tool=tool, tool_param=tool_param,
                         interspersed=interspersed, after_double_dash=after_double_dash,
                         **attrs)
