#!/usr/bin/env node
// Parses every Apex class (.cls) and trigger (.trigger) under the given directories with the Apex ANTLR
// grammar (@apexdevtools/apex-parser). Prints "file:line:col: message" for each syntax error and exits 1
// if there was any, 2 on bad usage, 0 otherwise. No org needed.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { ApexParserFactory, ApexErrorListener } = require("@apexdevtools/apex-parser");

// ANTLR lists every acceptable token after "expecting"; keep the line readable.
function shorten(msg) {
  return msg.length > 160 ? `${msg.slice(0, 157)}...` : msg;
}

class CollectingListener extends ApexErrorListener {
  constructor() {
    super();
    this.errors = [];
  }

  apexSyntaxError(line, column, msg) {
    // ANTLR columns are 0-based; editors and compilers count from 1.
    this.errors.push({ line, column: column + 1, msg: shorten(msg) });
  }
}

function apexFiles(root) {
  const found = [];
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const full = path.join(root, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== "node_modules" && !entry.name.startsWith(".")) found.push(...apexFiles(full));
    } else if (entry.name.endsWith(".cls") || entry.name.endsWith(".trigger")) {
      found.push(full);
    }
  }
  return found;
}

function parseFile(file) {
  const source = fs.readFileSync(file, "utf8");
  const listener = new CollectingListener();
  const { parser } = ApexParserFactory.createLexerAndParser(source, listener);
  if (file.endsWith(".trigger")) parser.triggerUnit();
  else parser.compilationUnit();
  return listener.errors;
}

function main(argv) {
  if (argv.length === 0) {
    console.error("usage: check.js DIR_OR_FILE...");
    return 2;
  }
  let files = [];
  for (const arg of argv) {
    if (!fs.existsSync(arg)) {
      console.error(`${arg}: no such file or directory`);
      return 2;
    }
    files = files.concat(fs.statSync(arg).isDirectory() ? apexFiles(arg) : [arg]);
  }
  let failures = 0;
  for (const file of files.sort()) {
    for (const err of parseFile(file)) {
      console.log(`${file}:${err.line}:${err.column}: ${err.msg}`);
      failures += 1;
    }
  }
  console.log(`apex-check: ${files.length} file(s) parsed, ${failures} syntax error(s)`);
  return failures === 0 ? 0 : 1;
}

process.exitCode = main(process.argv.slice(2));
