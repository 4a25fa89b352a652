// Renders values the way Grafana's front end does, with @grafana/data (the package Grafana's own
// panels use): getDisplayProcessor applies the field's unit, decimals, thresholds and colour mode.
// stdin: [{"config": <fieldConfig.defaults>, "values": [numbers]}]; stdout: per value
// {"text": <rendered string with unit>, "color": <Grafana colour name or the configured name>}.
// @grafana/data reads browser globals at import time; it needs only these two to exist in node.
globalThis.window = globalThis.window || { grafanaBootData: { settings: {} } };
globalThis.navigator = globalThis.navigator || { language: "en-US", languages: ["en-US"] };
const data = require("@grafana/data");

const theme = data.createTheme();
const byHex = {};
for (const name of ["green", "orange", "red", "blue", "yellow", "text"]) {
  byHex[theme.visualization.getColorByName(name)] = name;
}

const index = data.getValueFormatterIndex();
// Custom unit forms getValueFormat understands (valueFormats.ts); anything else must be an index id.
const custom = /^(suffix|prefix|count|currency|si|bool|time|locale|sci):/;

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ config, values }) => {
    const thresholds = config.thresholds && {
      ...config.thresholds,
      steps: config.thresholds.steps.map((s) => ({ ...s, value: s.value === null ? -Infinity : s.value })),
    };
    const field = {
      name: "v",
      type: data.FieldType.number,
      config: { ...config, thresholds },
      values: values,
    };
    const display = data.getDisplayProcessor({ field, theme });
    const known = !config.unit || config.unit in index || custom.test(config.unit);
    return values.map((v) => {
      const d = display(v);
      return { text: data.formattedValueToString(d), color: byHex[d.color] || d.color, known };
    });
  });
  process.stdout.write(JSON.stringify(out));
});
